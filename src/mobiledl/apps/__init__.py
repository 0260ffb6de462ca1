"""Task-specific acceleration (Cai et al. 2022, Sec. 5): methods built for one kind of data."""
