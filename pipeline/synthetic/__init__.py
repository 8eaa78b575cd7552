"""Generated Adience-shaped folders of real image files, for the demo, the tests and the benchmarks."""
