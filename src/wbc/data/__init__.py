"""Data (stage `download`): the source registry (`sources`, sources.yaml), fetching and checksum pins
(`fetch`), safe archive reading (`archives`), ingest into the manifest (`ingest`) and the image store
(`store`), the embedded synthetic dataset (`synthetic`), sample grids (`plots`). Imports core only."""
