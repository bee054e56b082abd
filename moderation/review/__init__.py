"""Human review: which verdicts go to people and in what order (`routing`), the queue with its claims,
decisions, appeals and audit log (`queue`), and the decisions contract (`decision_message`)."""
