"""Many machines side by side: checked machine records, and what to ship on each."""
