"""RL fine-tuning: Phasic Policy Gradient on RLlib with a KL penalty to the frozen BC policy served by Ray Serve."""
