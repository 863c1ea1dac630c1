"""casebridge's operator side: the CLI, the local Kafka broker, the demo, logging set-up."""
