"""Results (stages `evaluate`, `report`): metrics (`metrics`), predictors of both model kinds
(`predictors`), evaluation (`evaluate`), the result table (`report`), the generalization table
(`generalization`) and reproduction checks (`verify`). Imports learn, dataset, cells, data, core."""
