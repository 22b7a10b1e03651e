"""CLIPSep: text-queried sound separation learned from unlabeled video (ICLR 2023)."""
