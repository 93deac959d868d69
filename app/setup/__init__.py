"""The Setup page's parts: the form's state, checks and fields (form), the data source and column
mapping (data), the sweep (sweep)."""
