"""`python train.py ...` is `kinject-train ...`: pretrain with facts spliced in (kinject/cli/train.py)."""

from kinject.cli.train import main

if __name__ == "__main__":
    main()
