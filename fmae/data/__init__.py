"""Reading the benchmarks' real on-disk formats, checking them, and making synthetic copies of them."""
