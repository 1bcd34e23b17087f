def run_group(blocks, views, work, cache, maximize):
    return False
