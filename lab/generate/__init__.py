"""Generation: base and adapters side by side (compare), finding and checking adapters (adapters), and
base-vs-adapter evaluation on a test split (evaluate). The prompt text is lab.data.prompts."""
