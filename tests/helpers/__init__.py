"""What several test modules share: tiny data and studies, generated datasets, the source tree, CLI
runs. Test modules import from here (tests/ is on pytest's `pythonpath`), never from each other."""
