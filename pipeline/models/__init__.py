"""The model zoo: one file per family, the registry (`build`, `available`) and the weight loader."""
