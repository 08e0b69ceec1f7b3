"""Operations: doctor, the launchd/systemd service, metrics."""
