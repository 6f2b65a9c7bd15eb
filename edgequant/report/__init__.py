"""What people read: charts, the README's generated tables, the comparison of two revisions."""
