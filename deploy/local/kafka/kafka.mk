# The local Kafka broker of the distributed shape (single-node KRaft on 127.0.0.1).
# Included from the main Makefile, which defines VENV (default below for standalone use).
# Everything is in kafkactl.py; these targets only check the tools and call it.
# Environment knobs (KAFKA_PORT, KAFKA_DATA_DIR, ...) are listed in README.md here.

VENV ?= .venv
KAFKA_DIR := deploy/local/kafka
KAFKACTL := $(VENV)/bin/python $(KAFKA_DIR)/kafkactl.py

.PHONY: kafka-up kafka-down kafka-status kafka-logs kafka-tools

kafka-up: kafka-tools ## start the local Kafka broker (127.0.0.1:9092) and create the topics
	$(KAFKACTL) up

kafka-down: ## stop the local Kafka broker and delete its data
	$(KAFKACTL) down

kafka-status: ## is the local Kafka broker running and answering; its topics and memory
	$(KAFKACTL) status

kafka-logs: ## print the end of the local Kafka broker's log
	$(KAFKACTL) logs

kafka-tools:
	@command -v java >/dev/null 2>&1 || { echo "kafka-up needs java (Debian: apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
	@command -v mvn >/dev/null 2>&1 || { echo "kafka-up needs mvn (Debian: apt-get install maven)" >&2; exit 1; }
	@test -x $(VENV)/bin/python || { echo "kafka-up needs the virtualenv $(VENV) (run the Makefile's install target first)" >&2; exit 1; }
