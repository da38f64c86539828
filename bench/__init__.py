"""tagsync's benchmarks: each scenario measures one figure an operator will ask for."""
