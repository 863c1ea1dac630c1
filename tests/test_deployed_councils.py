"""Every council deployed the way a council would: its sandboxes, a deployment file, ``casebridge run --config``
as a subprocess, and the CLI. One step-down and one step-up per council, each completing as its protocol says,
mail included; what a protocol refuses is held naming its rule, through ``casebridge run`` too.

Nothing here builds a router in-process: the test only drives the case systems' APIs, the intake a team
posts to, the SMTP relay's Maildir and the ``casebridge`` command.
"""

from __future__ import annotations

from pathlib import Path

from casebridge.scenarios import (
    CareDirectorSandboxClient,
    EhmSandboxClient,
    LcsSandboxClient,
    TedSandboxClient,
    ehm_exemption,
    on_record,
    s47_step_up,
    step_down,
    step_up,
)
from connectors.ehm import stepup_transfer_id
from connectors.ted import transfer_id_for as ted_transfer_id
from contracts import Council
from tests.deployed import deployed, types, webhook


async def test_ns_12_g1_north_somerset_deployed_step_down_to_the_tray_step_up_closed_once_the_front_door_accepts(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """... and G1: an EHM step-up to child in need (s.17) with the Team Manager's exemption and no consent is held
    and dead-lettered naming G1 (an exemption is only for significant harm, s.47); its episode stays open."""
    async with deployed("north-somerset", tmp_path, kafka_bootstrap, topic_prefix) as d:
        lcs = LcsSandboxClient(d.systems.urls["lcs"], d.systems.token)
        ehm = EhmSandboxClient(d.systems.urls["ehm"], d.systems.token)
        child = lcs.create_child(locality="North")
        down = f"north-somerset-lcs-{lcs.request_stepdown(child)}".lower()
        episode = ehm.open_episode(locality="East")
        up = stepup_transfer_id(Council.NORTH_SOMERSET, ehm.request_stepup(episode))
        unconsented = ehm.open_episode(locality="East")
        s17 = stepup_transfer_id(
            Council.NORTH_SOMERSET,
            ehm.request_stepup(unconsented, consent=None, consent_exemption=ehm_exemption("Team Manager")),
        )
        first = await d.wait({down: "source-closed", up: "source-kept-open", s17: "dead-lettered"})
        [violations] = [e.violations for e in first[s17] if e.event_type == "held"]
        assert ["G1"] == [v.rule_id for v in violations]
        assert "only for a transfer to child-protection-s47, not child-in-need-s17" in violations[0].message
        [dead] = [x for x in await d.dead_letters(1) if x.get("casebridge.dlq.transfer.id") == s17]
        assert "G1" == dead["casebridge.dlq.rule.ids"] and "G1" in dead["casebridge.dlq.error.message"]
        assert "delivered" not in types(first[s17]) and "open" == ehm.episode(unconsented)["status"]
        assert "delivered" in types(first[down]) and "acknowledged" in types(first[down])
        [item] = [i for i in ehm.tray() if i["transfer_id"] == down]
        assert "support-leader" == item["assigned_to"]["role"]  # NS-2: the North Support Leader
        assert "closed" == lcs.child(child)["record_state"]
        assert "open" == ehm.episode(episode)["status"]  # NS-12: the contact on LCS is not the Front Door's yes
        assert up == lcs.contact(up)["transfer_id"]
        # the Front Door accepts on LCS; LCS's decision feed (run by casebridge run) closes the EHM episode
        lcs.http.post(f"/api/contacts/{up}/decision", json={"decision": "accepted", "decided_by": "FD manager"})
        later = await d.wait({up: "source-closed"})
        assert "front-door-decision" in types(later[up])
        assert "closed" == ehm.episode(episode)["status"]
        lcs.close()
        ehm.close()


async def test_sw26_05_sw26_03_swindon_2026_deployed_step_down_from_lcs_and_step_up_from_ehm(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with deployed("swindon", tmp_path, kafka_bootstrap, topic_prefix) as d:
        lcs = LcsSandboxClient(d.systems.urls["lcs"], d.systems.token)
        ehm = EhmSandboxClient(d.systems.urls["ehm"], d.systems.token)
        child = lcs.create_child(locality="North")
        down = f"swindon-lcs-{lcs.request_stepdown(child, council='swindon')}".lower()
        bare = lcs.create_child(locality="North")  # no assessment, no Lead Practitioner: held
        missing = {"assessment": None, "lead_practitioner": None, "lead_practitioner_organisation": None}
        held = f"swindon-lcs-{lcs.request_stepdown(bare, council='swindon', **missing)}".lower()
        episode = ehm.open_episode(locality="North")
        decision = {"decided_by": "Dana Dutymanager", "role": "Duty Manager", "decided_on": "2026-11-20",
                    "rationale": "Escalating concerns; a referral is endorsed."}  # fmt: skip
        up = stepup_transfer_id(Council.SWINDON, ehm.request_stepup(episode, management_decision=decision))
        by = await d.wait({down: "source-closed", held: "dead-lettered", up: "source-kept-open"})
        assert "Step Down to SBC Early Help" == lcs.child(child)["closure_reason"]  # SW26-5
        [item] = [i for i in ehm.tray() if i["transfer_id"] == down]
        assert "lead-professional" == item["assigned_to"]["role"]  # SW26-7: the named Lead Practitioner
        [violations] = [e.violations for e in by[held] if e.event_type == "held"]
        assert {"SW26-6", "SW26-7"} <= {v.rule_id for v in violations}
        assert "open" == lcs.child(bare)["record_state"]
        assert "open" == ehm.episode(episode)["status"]  # SW26-3: early help stays open
        assert up == lcs.contact(up)["transfer_id"]
        lcs.close()
        ehm.close()


async def test_sw22_10_sw22_07_swindon_2022_deployed_mail_to_the_hub_closure_after_the_recorded_allocation(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    with webhook() as hook:
        alerts = f"""
[alerts.duty-inbox]
kind = "email"
to = ["integration-duty@swindon.example"]

[alerts.ops]
kind = "webhook"
url = "{hook.url}"
token = {{ env = "CB_LOCAL_WEBHOOK_SECRET" }}
"""
        async with deployed("swindon-2022", tmp_path, kafka_bootstrap, topic_prefix, alerts=alerts,
                      env={"CB_LOCAL_WEBHOOK_SECRET": "webhook-token-0123456789"}) as d:  # fmt: skip
            cd = CareDirectorSandboxClient(d.systems.urls["care-director"], d.systems.token)
            person = cd.create_person()
            down = f"swindon-2022-cd-{cd.refer(person, 'ASO-EHH', worker=None, lead=False)}".lower()
            other = cd.create_person()
            not_down = f"swindon-2022-cd-{cd.refer(other, 'ASO-CIN')}".lower()  # a CIN outcome is no step-down
            s47 = s47_step_up(cd.create_person(), 1)
            assert 202 == d.post(s47).status_code
            ghost = s47_step_up("P-999999", 2)  # a record Care Director does not have: dead-lettered + one alert
            assert 202 == d.post(ghost).status_code
            by = await d.wait({down: "source-kept-open", s47["transfer_id"]: "source-kept-open",
                                 ghost["transfer_id"]: "alert"})  # fmt: skip
            dead = await d.dead_letters(2)
            reasons = {x.get("casebridge.dlq.transfer.id"): x["casebridge.dlq.error.message"] for x in dead}
            assert "'ASO-CIN'" in reasons[not_down] and "SW22-7" in reasons[not_down]  # the rule and the code
            [urgent] = [e for e in by[s47["transfer_id"]] if e.event_type == "delivered"]
            assert urgent.urgent  # SW22-1
            # SW22-10: nothing reports who the Hub allocated; an operator records it, then Care Director closes
            assert "open" == cd.person(person)["record_state"]
            done = d.cli("allocate", down, "--worker", "Casey Hubworker", "--organisation", "Early Help Hub",
                         "--operator", "duty-operator")  # fmt: skip
            assert 0 == done.returncode, done.stderr
            await d.wait({down: "source-closed"})
            closure = cd.person(person)["closure"]
            worker = closure["early_help_worker"]["name"]
            assert ("Early Help Hub", "Casey Hubworker") == (closure["lead_service"], worker)
            to = sorted(str(m["To"]) for m in d.mails())
            assert ["ehhub@swindon.example", "integration-duty@swindon.example", "mash@swindon.example"] == to
            alerts_sent = [b for b in hook.bodies if b.get("transfer_id") == ghost["transfer_id"]]
            assert 1 == len(alerts_sent)  # once per state change, on both channels
            assert "Bearer webhook-token-0123456789" == hook.headers[0]["Authorization"]
            cd.close()


async def test_lu07_luton_deployed_through_the_intake_one_receipt_and_one_allocation_notice_across_a_restart(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with deployed("luton", tmp_path, kafka_bootstrap, topic_prefix) as d:
        down = step_down("luton", 1)
        answer = d.post(down)
        assert 202 == answer.status_code, answer.text
        await d.wait({down["transfer_id"]: "source-closed"})
        receipts = [m for m in d.mails() if "receipt" in str(m["Subject"]).lower()]
        assert 1 == len(receipts)
        d.restart()  # casebridge run stopped and started again: nothing is sent twice
        done = d.cli("allocate", down["transfer_id"], "--worker", "Kit Supportworker", "--organisation",
                     "Early Help Team", "--operator", "duty-operator")  # fmt: skip
        assert 0 == done.returncode, done.stderr
        await d.wait({down["transfer_id"]: "notice-sent"})
        d.restart()
        up = step_up("luton", 2)
        assert 202 == d.post(up).status_code
        await d.wait({up["transfer_id"]: "source-kept-open"})  # LU-4: early help closes 10 days on
        mails = d.mails()
        notices = [m for m in mails if "notice" in str(m["Subject"]).lower()]
        subjects = sorted(str(m["Subject"]) for m in notices)
        assert 2 == len(notices), subjects  # exactly one receipt and one allocation notice
        assert {"earlyhelp-team@luton.example", "mash@luton.example"} <= {str(m["To"]) for m in mails}
        status = d.post_status(down["transfer_id"])
        assert "closed" == status["status"]


async def test_ba15_ba05_ba03_barnsley_deployed_ted_feed_to_the_mailbox_and_a_step_up_to_a_ted_referral(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with deployed("barnsley", tmp_path, kafka_bootstrap, topic_prefix) as d:
        ted = TedSandboxClient(d.systems.urls["ted"], d.systems.token)
        case = ted.create_case()
        down = ted_transfer_id(Council.BARNSLEY, ted.request_stepdown(case, "SD-EHS"))
        watched = ted.create_case()
        monitoring = ted_transfer_id(Council.BARNSLEY, ted.request_stepdown(watched, "SD-MON"))
        eha_case = ted.create_case()
        eha = ted.open_eha(eha_case)
        up = on_record(step_up("barnsley", 1), "ted", eha)
        assert 202 == d.post(up).status_code
        await d.wait({down: "source-closed", monitoring: "dead-lettered", up["transfer_id"]: "source-closed"})
        [dead] = [x for x in await d.dead_letters(1) if x.get("casebridge.dlq.transfer.id") == monitoring]
        assert "BA-5" == dead["casebridge.dlq.rule.ids"] and "BA-5" in dead["casebridge.dlq.error.message"]
        assert "closed" == ted.case(case)["record_state"]  # BA-15: after the mailbox accepted it
        assert "open" == ted.case(watched)["record_state"]
        assert ["earlyhelp@barnsley.example"] == [str(m["To"]) for m in d.mails()]
        assert up["transfer_id"] == ted.referral(up["transfer_id"])["transfer_id"]
        assert "closed" == ted.eha(eha)["status"]  # BA-3: the EHA closes with "step up to social care"
        ted.close()
