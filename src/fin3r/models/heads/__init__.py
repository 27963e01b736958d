"""Task heads shared by several families: CroCo DPT, VGGT DPT, the linear patch head and VGGT's
camera head."""
