"""GPU benchmarks: each times Dreamy next to the stock/official baseline in one process and prints JSON."""
