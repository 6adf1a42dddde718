# The two set-up commands of the README, and the checks CI runs.
.PHONY: run test lint bench stop

run:    ## start the local Kafka broker and run the main job
	@scripts/run.sh

test:   ## run the test suite (starts and stops its own broker)
	@scripts/test.sh

lint:   ## ruff, mypy and the import layers
	@venv="$$(scripts/venv.sh)" && "$$venv/bin/ruff" check . && "$$venv/bin/ruff" format --check . && "$$venv/bin/mypy" && "$$venv/bin/lint-imports"

bench:  ## codec and produce/consume benchmarks against the local broker
	@venv="$$(scripts/venv.sh)" && "$$venv/bin/python" -m bench.codec && "$$venv/bin/python" -m bench.produce && "$$venv/bin/python" -m bench.overhead && "$$venv/bin/python" -m bench.processors && "$$venv/bin/python" -m bench.risk_quality

stop:   ## stop the local broker
	@venv="$$(scripts/venv.sh)" && "$$venv/bin/evostream" stack down
