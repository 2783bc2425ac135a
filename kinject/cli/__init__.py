"""The entry points behind `train.py`, `evaluate.py` and `fit_law.py` (console scripts kinject-train,
kinject-evaluate, kinject-fit-law); the other tools' `main` lives beside what they show."""
