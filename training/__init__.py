"""Training: teacher data, rewards, UDRL examples and the GPT-2 student."""
