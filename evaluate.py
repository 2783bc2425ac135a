"""`python evaluate.py ...` is `kinject-evaluate ...`: re-score or export a run (kinject/cli/evaluate.py)."""

from kinject.cli.evaluate import main

if __name__ == "__main__":
    main()
