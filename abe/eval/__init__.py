"""Evaluation: Recall@K and NMI, embeddings of a trained net, retrievals, and the plots people
look at."""
