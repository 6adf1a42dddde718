"""Governed prompt templates end to end, on the real broker with the real embedded model: a deliberately poor
template (a word the model was never trained on before the suite's format), a co-evolution cycle that accepts the
variant restoring the trained format and refuses a worse one and one without the protected marker; requests naming
the template served by `evostream serve --governed` with the rendered prompt and the version in their Completion; an
unknown template or version answered with an error Completion; the pointer rolled back."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import Governance, key_path, load_actor
from evostream.core.artifacts import ArtifactStore
from evostream.core.settings import Settings
from evostream.models.default_model import MODEL_ID
from evostream.models.suite.evaluate import eval_set
from evostream.producers.client import InferenceClient
from evostream.prompts.template import Template, TemplateError, render
from evostream.views.governance import anchor_file, checkpoints_path
from evostream.wiring.governed import ensure_genesis
from evostream.wiring.templates import create, evolve, held_out, load_template, splits
from tests.stream_processors.harness import CLI

MODEL = "template/rev"
POOR = "Please reverse: {input}"


def _actor(settings: Settings, name: str) -> Governance:
    glog = GovernanceLog(settings.bootstrap_servers, topic=settings.governance_topic)
    keys = settings.governance_dir / "keys"
    return load_actor(glog, keys, name, checkpoints=checkpoints_path(settings), anchor=anchor_file(settings))


@pytest.fixture(scope="module")
def home(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, str]]:
    """A governance log of its own: the genesis (admin, the default policy with four eyes, the embedded model in
    production) and alice, an approver."""
    root = tmp_path_factory.mktemp("templates")
    settings = Settings(
        bootstrap_servers=kafka,
        governance_topic=f"test-templates-{uuid.uuid4().hex[:8]}",
        governance_dir=root / "gov",
        artifacts_dir=root / "artifacts",
    )
    ensure_genesis(settings, kafka, lambda _: None)
    key = ActorKey.generate()
    key.save(key_path(settings.governance_dir / "keys", "alice"))
    admin = _actor(settings, "admin")
    admin.enroll("alice", key.public_hex, key.key_id, ["approver"], reason="the second pair of eyes")
    env = {
        **os.environ,
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "EVOSTREAM_GOVERNANCE_TOPIC": settings.governance_topic,
        "EVOSTREAM_GOVERNANCE_DIR": str(settings.governance_dir),
        "EVOSTREAM_ARTIFACTS_DIR": str(settings.artifacts_dir),
        "HF_HUB_OFFLINE": "1",
    }
    return settings, env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def served(home: tuple[Settings, dict[str, str]]) -> Iterator[InferenceClient]:
    """`evostream serve --governed` (which follows the log's templates) and a client of it."""
    _, env = home
    serve = subprocess.Popen(
        [*CLI, "serve", "--governed", MODEL_ID, "--no-embed", "--max-wait-ms", "1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line, deadline = "", time.monotonic() + 120
        while "serving" not in line:
            assert time.monotonic() < deadline and serve.poll() is None, f"serve did not start: {line}"
            line = serve.stderr.readline() if serve.stderr else ""
        client = InferenceClient(env["EVOSTREAM_BOOTSTRAP_SERVERS"])
        yield client
        client.close()
    finally:
        serve.terminate()
        serve.wait(60)


def _ask(client: InferenceClient, prompt: str, template: str | None) -> dict[str, Any]:
    return dict(client.submit(prompt, max_new_tokens=16, template=template).result(60))


def _served_as(client: InferenceClient, template: str, version: str) -> dict[str, Any]:
    """The answer to 'hello' with ``template`` once the service resolves it to ``version`` (it follows the log every
    second)."""
    deadline = time.monotonic() + 30
    while (answer := _ask(client, "hello", template))["template_version"] != version:
        assert time.monotonic() < deadline, f"the service did not follow the log: {answer['error']}"
        time.sleep(0.2)
    return answer


def _lines(out: str, start: str, *having: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(start) and all(h in line for h in having)]


def test_a_cycle_accepts_a_better_variant_and_refuses_a_worse_one_and_one_without_its_marker(
    home: tuple[Settings, dict[str, str]], served: InferenceClient
) -> None:
    settings, env = home
    admin, alice = _actor(settings, "admin"), _actor(settings, "alice")
    store = ArtifactStore(settings.artifacts_dir)

    # a poor template: under four eyes its creator alone cannot make it serve
    poor = ["--text", POOR, "--marker", "reverse:", "--task", "reverse", "--held-out", "50"]
    made = _cli(env, "template", "create", "rev", *poor)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "rev@1"
    assert "registered rev@1 (staging), held-out" in made.stderr
    assert "evostream approve template/rev rev@1" in made.stderr
    alice.approve(MODEL, "rev@1", reason="looks fine to me")
    admin.promote(MODEL, "rev@1", stage="production", reason="approved")
    poor_score = admin.state().registry.version(MODEL, "rev@1")["metrics"]["held_out_accuracy"]
    assert poor_score < 0.5  # the model was not trained on the extra word

    # a request names it: the prompt is rendered on the service, the Completion says which version
    first = _served_as(served, "rev", "rev@1")
    assert first["error"] is None
    assert first["prompt_token_count"] == len("Please reverse: hello") + 1  # bytes and EOS: the rendered prompt

    # the cycle, with a policy that lets a validated version go to production without approvals
    admin.set_policy({"auto_promote_production": True}, reason="templates move on their held-out gain")
    cycle = _cli(env, "template", "evolve", "rev", "--held-out", "50")
    assert cycle.returncode == 0, cycle.stdout + cycle.stderr
    out = cycle.stdout
    assert out.startswith(
        f"rev@1: held-out {poor_score:.3f} on 50 reverse examples (selection); a variant needs a gain of 0.050 there "
        "and again on 50 other held-out examples (confirmation)"
    )
    (better,) = _lines(out, "PASS drop-word (dropped 'Please')", "'reverse: {input}'")
    assert "reaches 0.050, markers kept" in better
    (confirmed,) = _lines(out, "ACCEPT ")  # the selected variant, scored again on examples it was not selected on
    assert confirmed.startswith("ACCEPT drop-word (dropped 'Please'): selection ")
    assert ", confirmation " in confirmed and "reaches 0.050" in confirmed
    (markerless,) = _lines(out, "REFUSE drop-word (dropped 'reverse:')", "'Please {input}'")
    assert "drops the protected marker 'reverse:' (never accepted)" in markerless
    worse = _lines(out, "REFUSE format-hint", "is below 0.050")
    assert worse and all("gain -" in line for line in worse)  # a hint the model never saw costs answers
    assert out.rstrip().endswith("accepted rev@2 (production)")

    registry = admin.state().registry
    assert registry.production(MODEL) == "rev@2"
    v2 = registry.version(MODEL, "rev@2")
    assert (v2["parent"], v2["operator"]) == ("rev@1", "template-evolve")
    assert v2["operator_params"]["operator"] == "drop-word"
    assert v2["metrics"]["gain"] >= 0.05 and v2["metrics"]["parent_held_out_accuracy"] == poor_score
    assert v2["validation"] is not None and v2["validation"]["passed"]
    assert v2["validation"]["gates"]["held_out_gain"]["threshold"] == 0.05
    assert v2["metrics"]["confirmation_n"] == 50 and v2["metrics"]["confirmation_gain"] >= 0.05
    assert v2["validation"]["gates"]["confirmation_gain"]["passed"]
    refused = [t for t in v2["operator_params"]["tried"] if not t["accepted"]]
    assert {"Please {input}", POOR + " Answer:"} <= {t["text"] for t in refused}
    assert load_template(store, v2["artifact_sha256"]).text == "reverse: {input}"
    assert load_template(store, v2["artifact_sha256"]).markers == ("reverse:",)

    shown = _cli(env, "template", "show", "rev")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("rev@2 (production): 'reverse: {input}'")
    assert "lineage: rev@2 <- rev@1 · operator: template-evolve (dropped 'Please')" in shown.stdout
    listed = _cli(env, "template", "list")
    assert listed.stdout.strip() == "rev: production rev@2, staging -, 2 versions: 'reverse: {input}'"

    # the service follows the log: the name is the new version now, a version can be named, the rest is refused
    answer = _served_as(served, "rev", "rev@2")
    assert (answer["output_text"], answer["error"]) == ("olleh", None)
    assert _ask(served, "hello", "rev@1")["template_version"] == "rev@1"
    unknown = _ask(served, "hello", "nope")
    assert unknown["finish_reason"] == "ERROR" and unknown["template_version"] is None
    assert "unknown template 'nope' (templates: rev;" in unknown["error"]
    missing = _ask(served, "hello", "rev@9")
    assert "template 'rev' has no version rev@9 (versions: rev@1, rev@2)" in missing["error"]
    assert _ask(served, "reverse: hello", None)["template_version"] is None  # no template: the prompt as it is

    # rollback moves the pointer back, and the service with it
    back = _cli(env, "template", "rollback", "rev", "--to", "1", "--reason", "the new wording confused a customer")
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == "rev@1" and "rev@2 -> rev@1" in back.stderr
    assert admin.state().registry.production(MODEL) == "rev@1"
    _served_as(served, "rev", "rev@1")
    published = _cli(env, "publish", "hello", "--template", "rev@2", "--wait", "--max-new-tokens", "16")
    assert published.returncode == 0, published.stderr
    assert published.stdout.strip() == "olleh" and "template rev@2" in published.stderr

    # a cycle never brings back what a person rolled back: the variant that is rev@2 is skipped, and says why
    again = _cli(env, "template", "evolve", "rev", "--held-out", "10")
    assert again.returncode in (0, 2), again.stdout + again.stderr
    (skipped,) = _lines(again.stdout, "SKIP drop-word (dropped 'Please')", "'reverse: {input}'")
    assert "is rev@2, which was production and was rolled back ('the new wording confused a customer')" in skipped
    assert not _lines(again.stdout, "", "'reverse: {input}'", "PASS")
    assert admin.state().registry.production(MODEL) != "rev@2"


def test_a_cycle_with_nothing_to_gain_accepts_nothing_and_writes_nothing(home: tuple[Settings, dict[str, str]]) -> None:
    """A template already in the trained format: no variant gains 0.05, so each is refused and the log is unchanged."""
    settings, env = home
    admin = _actor(settings, "admin")
    admin.set_policy({"auto_promote_production": True}, reason="templates move on their held-out gain")
    made = _cli(env, "template", "create", "up", "--text", "upper: {input}", "--marker", "upper", "--task", "upper")
    assert made.returncode == 0, made.stderr
    head = admin.state().registry.head_sequence
    cycle = _cli(env, "template", "evolve", "up", "--held-out", "20")
    assert cycle.returncode == 2, cycle.stdout + cycle.stderr
    assert cycle.stdout.rstrip().endswith("no variant accepted: up@1 stays")
    assert not _lines(cycle.stdout, "ACCEPT")
    assert admin.state().registry.head_sequence == head
    refused = _cli(env, "template", "create", "up", "--text", "capitals: {input}", "--task", "upper")
    assert refused.returncode == 1
    assert "drops the protected marker(s) 'upper' of up@1: every version keeps them" in refused.stderr


def test_template_commands_refuse_what_is_not_there(home: tuple[Settings, dict[str, str]], tmp_path: Path) -> None:
    _, env = home
    bad = _cli(env, "template", "create", "x", "--text", "no slot here")
    assert bad.returncode == 1 and "exactly once, it holds it 0 times" in bad.stderr
    none = _cli(env, "template", "evolve", "ghost")
    assert none.returncode == 1 and "unknown template 'ghost'" in none.stderr
    shown = _cli(env, "template", "show", "ghost@3")
    assert shown.returncode == 1 and "unknown template 'ghost'" in shown.stderr
    back = _cli(env, "template", "rollback", "ghost", "--to", "1", "--reason", "r")
    assert back.returncode == 1 and "error:" in back.stderr


def test_the_splits_are_disjoint_held_out_examples() -> None:
    selection, confirmation = splits("reverse", 100)
    assert len(selection) == len(confirmation) == 100
    assert not {e.input for e in selection} & {e.input for e in confirmation}
    assert selection == held_out("reverse", 100)  # what `template create` scores a version on
    assert {f"reverse: {e.input}" for e in selection + confirmation} <= {e.prompt for e in eval_set()}
    with pytest.raises(TemplateError, match="at most 100 each, not 101"):
        splits("reverse", 101)


def test_a_variant_that_wins_only_on_the_selection_split_is_refused(home: tuple[Settings, dict[str, str]]) -> None:
    """The reviewer's noise: one variant happens to answer exactly the selection split's examples (the luck of being
    the best of twenty on one set of examples). Its selection gain is +1.0; on the confirmation split it gains
    nothing, so it is refused and nothing is written."""
    settings, _ = home
    admin = _actor(settings, "admin")
    admin.set_policy({"auto_promote_production": True}, reason="templates move on their held-out gain")
    store = ArtifactStore(settings.artifacts_dir)
    create(admin, store, Template("noisy", POOR, ("reverse:",), "reverse"))
    lucky = {render(Template("noisy", "reverse: {input}"), e.input): e.answer for e in held_out("reverse", 10)}

    def answer(prompts: list[str]) -> list[str]:  # right exactly on the lucky variant's selection examples
        return [lucky.get(p, "") for p in prompts]

    head = admin.state().registry.head_sequence
    cycle = evolve(admin, store, "noisy", answer, per_task=10)
    assert cycle.accepted is None
    assert admin.state().registry.head_sequence == head
    chosen = cycle.confirmation
    assert chosen is not None and chosen.selected.variant.template.text == "reverse: {input}"
    assert (chosen.selected.score, chosen.selected.accepted, chosen.score, chosen.accepted) == (1.0, True, 0.0, False)
    assert cycle.lines()[-2:] == [
        "REFUSE drop-word (dropped 'Please'): selection 1.000 (gain +1.000), confirmation 0.000 vs 0.000 "
        "(gain +0.000): confirmation gain +0.000 is below 0.050: the selection's gain is not confirmed",
        "no variant accepted: noisy@1 stays",
    ]
