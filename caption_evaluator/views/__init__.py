"""What a person looks at: figures of runs and items, and notebook widgets. Views read saved files or the dicts that are saved."""
