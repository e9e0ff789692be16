"""What every part of embed-cluster shares; imports nothing of ours (a leaf, like zguide's MDP.py)."""
