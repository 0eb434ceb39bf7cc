"""HTTP plumbing shared by every front end: the route table and body/response helpers."""
