"""Records as read: parsing text into fields, validation (with a reason for every rejected
row) and the protection of personal fields."""
