"""Data: CSR arrays, the XC and VW readers, synthetic sets, the registry and downloader, TFDS,
loading and validation splits, fixed-shape batches."""
