"""CLIPSonic: text-to-audio synthesis learned from unlabeled video (WASPAA 2023)."""
