"""Making the forward cheap on CPU: packed-GQA tree attention, oneDNN / int8 linear layers."""
