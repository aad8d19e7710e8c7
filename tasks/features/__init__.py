"""Clean rows and the features models learn from: windows, lags, encodings."""
