"""The backends of the sliced ops: C++/CUDA (the compiled extension) and Triton, registered with the dispatcher."""
