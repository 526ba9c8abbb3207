"""The paper's experiments as data (experiments.json, paper_results.json), the driver that runs
each configuration as its own train.sh run folder, and the report beside the paper's numbers."""
