"""Evaluation: Recall@K and NMI, embeddings of a trained net, and the plots people look at."""
