"""Operations: what the CLI, the agent and the dashboard call. Each takes its locks, runs engine and
guard steps, and returns a result that renders itself (to_json/to_text/exit_code)."""
