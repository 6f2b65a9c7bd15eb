"""Working with DVC as a team: remotes that verify what they serve, DVC's own lock files."""
