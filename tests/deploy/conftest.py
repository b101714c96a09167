def pytest_configure(config):
    config.addinivalue_line("markers", "slow: builds and installs the wheel and starts a cluster from it (about a "
                                       "minute); deselect with -m 'not slow'")
