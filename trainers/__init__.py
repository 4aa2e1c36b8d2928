"""absl entry points: each main() parses flags and calls one library function."""
