"""Learn (stage `train`): the model zoo (`models`, `zoo`), training (`train`, `augment`,
`distributed`, `kernels`: CPU kernel pinning), BatchNorm adaptation (`adapt`), the feature SVM
(`tavakoli`) and one table run (`runs`). Imports cells, data and core."""
