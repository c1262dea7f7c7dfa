"""stepbus planner: the ReAct loop as a Kafka service."""
