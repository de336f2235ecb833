"""Dataset (stage `split`): the train/val/test assignment and the packed tensors (`split`), and the
same model inputs from anyone's images (`inputs`) and other labs' sets (`external`). Imports cells,
dedup (the cross-split audit), data and core."""
