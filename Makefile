# The two set-up commands of the README, and the checks CI runs.
.PHONY: run test test-fast lint bench stop

run:    ## start the local Kafka broker and run the main job
	@scripts/run.sh

test:   ## run the test suite (starts and stops its own broker)
	@scripts/test.sh

test-fast:  ## the tests that need neither the broker nor the browser (a few minutes at most)
	@scripts/test.sh -m "not integration and not browser and not quarantine"

lint:   ## ruff (no formatter opt-outs), mypy --strict and the import layers
	@scripts/lint.sh

bench:  ## codec and produce/consume benchmarks against the local broker
	@venv="$$(scripts/venv.sh)" && "$$venv/bin/python" -m bench.codec && "$$venv/bin/python" -m bench.produce && "$$venv/bin/python" -m bench.overhead && "$$venv/bin/python" -m bench.processors && "$$venv/bin/python" -m bench.risk_quality

stop:   ## stop the local broker
	@venv="$$(scripts/venv.sh)" && "$$venv/bin/evostream" stack down
