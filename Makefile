# The two commands of the README: bring the platform up on this machine, and run the tests.
# Both install whatever is missing first (deploy/install.sh is idempotent and quick when warm).
HOSTS ?= 3

.PHONY: install up down status test test-sqlite
install:
	bash deploy/install.sh

up: install
	.venv/bin/vmflow up --hosts $(HOSTS)

down:
	.venv/bin/vmflow down

status:
	.venv/bin/vmflow status

test: install
	.venv/bin/pytest -v

# The same suite with the integration stack's inventory on SQLite, the embedded default.
test-sqlite: install
	VMFLOW_TEST_DATABASE=sqlite .venv/bin/pytest -v
