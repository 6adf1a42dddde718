"""Token ids shown as text with the generating version's tokenizer (``evostream profile``'s token paths)."""

from __future__ import annotations

from pathlib import Path

from evostream.cli.readers import format_profile
from evostream.core.errors import ConsumeError
from evostream.models.loading import load_model
from evostream.views.token_text import TokenDecoder, default_version, local_resolver


def profile(version: str, paths: list[list[int]]) -> dict[str, object]:
    return {
        "model_version": version,
        "window_start_us": 0,
        "step_count": 10,
        "trace_count": 2,
        "head_utilization": [[0.5, 0.01]],
        "layer_frequency": [1.0],
        "dormant_neuron_fraction": [],
        "top_token_paths": [{"token_ids": ids, "count": 7 - i} for i, ids in enumerate(paths)],
    }


def test_the_default_models_paths_read_as_its_tokens_texts(tmp_path: Path) -> None:
    version = default_version()
    lm = load_model("default", device="cpu")
    assert version == lm.version  # the version the service stamps on every record
    ids = lm.tokenizer("reverse: hello").input_ids[:3]
    decoder = TokenDecoder(local_resolver(tmp_path))
    expected = '"' + "·".join(lm.tokenizer.decode([i]) for i in ids) + '"'
    assert decoder.path_text(version, ids) == expected
    text = format_profile(profile(version, [ids]), decoder)
    assert f"top token paths: {expected} x7" in text
    assert str(ids) not in text  # the raw ids are gone


def test_a_version_whose_tokenizer_is_not_here_keeps_its_ids(tmp_path: Path) -> None:
    calls: list[int] = []

    def registry() -> object:
        calls.append(1)
        raise ConsumeError("no broker at 127.0.0.1:1")

    decoder = TokenDecoder(local_resolver(tmp_path, registry))
    assert decoder.path_text("elsewhere@0123456789ab", [50, 53]) == '"#50·#53"'
    assert decoder.path_text("elsewhere@0123456789ab", [51]) == '"#51"'
    assert decoder.path_text("other@ba9876543210", [51]) == '"#51"'
    assert calls == [1]  # the governance log is replayed once, not per version or per path


def test_without_a_decoder_the_profile_shows_ids_as_before() -> None:
    assert "top token paths: [50, 53, 51] x7" in format_profile(profile("v", [[50, 53, 51]]))


def test_a_folder_without_a_tokenizer_keeps_ids(tmp_path: Path) -> None:
    decoder = TokenDecoder(lambda version: tmp_path)
    assert decoder.pieces("v", [5]) == ["#5"]
