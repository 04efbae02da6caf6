"""Pure cost models: specs and sizes in, FLOP / seconds / bytes out."""
