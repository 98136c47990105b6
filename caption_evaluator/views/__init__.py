"""What a person looks at: figures of runs and items, the caption check's HTML report, and notebook widgets. Views read saved files, the dicts that are saved, or a check's findings."""
