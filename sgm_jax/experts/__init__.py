"""Step 2 of SGM: which neurons are experts: exact AUROC per neuron, scores files, and which modality each reads."""
