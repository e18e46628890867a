from appliance.cli import run

run()
