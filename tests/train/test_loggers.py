"""The loggers' x-axis is training tokens: TensorBoard's step, and a tokens column in the CSV."""

import csv

from ctxsae.train.loggers import TokensCSVLogger


def test_csv_rows_carry_the_training_tokens_beside_the_step(tmp_path):
    logger = TokensCSVLogger(save_dir=tmp_path, name="csv", version="")
    logger.tokens_per_step = 4096
    logger.log_metrics({"train/fvu": 0.5}, step=9)
    logger.log_metrics({"val/fvu": 0.4}, step=20)
    logger.save()
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    assert [(r["step"], r["tokens"]) for r in rows] == [("9", "36864"), ("20", "81920")]
